// Plain Java, no Android dependency: the app uses it, and CI compiles and tests it with
// javac, Gson and JUnit 4 alone (run-tests.sh, Debian's jars), since the Android build cannot run there.
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

dependencies {
    implementation(libs.gson) // JSON: manifests, golden indexes, bench rows (Json.java)
    testImplementation(libs.junit)
}

tasks.test {
    // Golden samples from `dermmobile android` or dermmobile.android.write_golden_samples;
    // without DERMMOBILE_GOLDEN the golden tests are skipped (the unit tests still run).
    systemProperty("dermmobile.golden", providers.environmentVariable("DERMMOBILE_GOLDEN").getOrElse(""))
    testLogging { events("passed", "skipped", "failed") }
}
