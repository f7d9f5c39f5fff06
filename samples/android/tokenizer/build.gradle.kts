// Plain Kotlin/JVM: no Android dependency, so the tokenizer and its parity test run on any JVM
// (edgekit's CI compiles the same sources with Debian's kotlinc 1.3 and checks them against the bundle's vectors).
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("org.jetbrains.kotlin.jvm")
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions { jvmTarget.set(JvmTarget.JVM_17) }
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // The parity test reads <bundle>/tokenizer_test_vectors.json and <bundle>/tokenizer/vocab.txt.
    val bundle = rootProject.file(providers.gradleProperty("edgekitBundle").getOrElse("../../out/pixel4"))
    systemProperty("edgekit.bundle", bundle.absolutePath)
}

// ./gradlew :tokenizer:parity -PedgekitBundle=... : the same runner CI uses, through Gradle.
tasks.register<JavaExec>("parity") {
    group = "verification"
    description = "Tokenize every case of the bundle's tokenizer_test_vectors.json and compare with the Hugging Face ids"
    classpath = sourceSets["main"].runtimeClasspath
    mainClass.set("edgekit.tokenizer.TokenizerParityKt")
    val bundle = rootProject.file(providers.gradleProperty("edgekitBundle").getOrElse("../../out/pixel4"))
    args(File(bundle, "tokenizer_test_vectors.json").absolutePath, File(bundle, "tokenizer/vocab.txt").absolutePath)
}
