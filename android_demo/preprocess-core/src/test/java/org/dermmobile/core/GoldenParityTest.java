package org.dermmobile.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.Assume;
import org.junit.Test;

/**
 * This module against the golden samples Python wrote (dermmobile.android.write_golden_samples).
 *
 * The folder comes from -Ddermmobile.golden=DIR or DERMMOBILE_GOLDEN=DIR; it holds a
 * golden.json, or sub-folders that each hold one. run-tests.sh always sets it. Without it
 * (a plain `gradle test`) these tests are skipped, not passed.
 */
public class GoldenParityTest {
    static File goldenRoot() {
        String dir = System.getProperty("dermmobile.golden");
        if (dir == null || dir.isEmpty()) {
            dir = System.getenv("DERMMOBILE_GOLDEN");
        }
        Assume.assumeTrue("no golden folder given (-Ddermmobile.golden or DERMMOBILE_GOLDEN)", dir != null && !dir.isEmpty());
        return new File(dir);
    }

    static List<File> goldenSets(File root) {
        List<File> sets = new ArrayList<>();
        if (new File(root, Golden.INDEX).isFile()) {
            sets.add(root);
        }
        File[] children = root.listFiles();
        if (children != null) {
            Arrays.sort(children);
            for (File child : children) {
                if (new File(child, Golden.INDEX).isFile()) {
                    sets.add(child);
                }
            }
        }
        return sets;
    }

    @Test
    public void preprocessingAndPostprocessingMatchPython() throws Exception {
        File root = goldenRoot();
        List<File> sets = goldenSets(root);
        if (sets.isEmpty()) {
            fail(root + " has no golden.json (nor sub-folders with one); write them with dermmobile.android.write_golden_samples");
        }
        int checked = 0;
        List<String> failures = new ArrayList<>();
        for (File set : sets) {
            Golden golden = Golden.load(Golden.folder(set), set.getPath());
            assertTrue(set + ": golden.json lists no samples", !golden.samples.isEmpty());
            for (GoldenSample sample : golden.samples) {
                ParityResult result = Parity.check(golden, sample);
                System.out.println(set.getName() + " " + result);
                if (!result.passed()) {
                    failures.add(set.getName() + " " + result);
                }
                checked++;
            }
        }
        System.out.println("golden samples checked: " + checked + " in " + sets.size() + " set(s)");
        if (!failures.isEmpty()) {
            fail("Java preprocessing drifted from dermmobile.preprocess:\n" + String.join("\n", failures));
        }
    }

    @Test
    public void manifestLabelsMatchGoldenLogits() throws Exception {
        for (File set : goldenSets(goldenRoot())) {
            Golden golden = Golden.load(Golden.folder(set), set.getPath());
            for (GoldenSample sample : golden.samples) {
                assertEquals(set + " " + sample.id, golden.manifest.labels.size(), sample.logits.length);
                assertEquals(set + " " + sample.id, golden.manifest.labels.get(sample.top1), sample.top1Label);
            }
        }
    }
}
