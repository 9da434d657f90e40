package org.dermmobile.core;

import java.util.Locale;

/** What {@link Parity#check} found for one golden sample: what differed, and by how much. */
public final class ParityResult {
    public String id;
    public double maxPixelDiff;
    public double maxNormalizedDiff;
    public int quantizedMismatches; // beyond Parity's rounding rule; must be 0
    public boolean inputSha256Equal;
    public double maxProbabilityDiff;
    public boolean top1Equal;
    public String problems = "";

    public boolean passed() {
        return problems.isEmpty();
    }

    @Override
    public String toString() {
        return String.format(Locale.ROOT,
                "%s: max pixel diff %.3g (tol %.0e), max normalized diff %.3g (tol %.0e), quantized mismatches %d, "
                        + "input sha256 %s, max probability diff %.3g (tol %.0e), top-1 %s%s",
                id, maxPixelDiff, Parity.PIXEL_TOLERANCE, maxNormalizedDiff, Parity.NORMALIZED_TOLERANCE, quantizedMismatches,
                inputSha256Equal ? "identical" : "differs in low bits", maxProbabilityDiff, Parity.PROBABILITY_TOLERANCE,
                top1Equal ? "same" : "DIFFERENT", problems.isEmpty() ? "" : " -- FAILED: " + problems);
    }
}
