// Semantic-search demo over an edgekit bundle. The model and vocabulary are copied from the bundle
// (gradle.properties: edgekitBundle) into the generated assets at build time.
plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

val bundleDir = rootProject.file(providers.gradleProperty("edgekitBundle").getOrElse("../../out/pixel4"))
val modelFile = providers.gradleProperty("edgekitModel").getOrElse("model-int8.tflite")

android {
    namespace = "edgekit.demo"
    compileSdk = 35
    defaultConfig {
        applicationId = "edgekit.demo"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        buildConfigField("String", "MODEL_ASSET", "\"$modelFile\"")
    }
    buildFeatures { buildConfig = true }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    // Memory-mapping needs the model stored uncompressed in the APK.
    androidResources { noCompress += "tflite" }
    sourceSets["main"].assets.srcDir(layout.buildDirectory.dir("generated/edgekit-assets"))
}

val copyBundleAssets by tasks.registering(Copy::class) {
    description = "Copies the .tflite model, vocab.txt and labels.json (if any) from the edgekit bundle"
    from(bundleDir) { include(modelFile, "labels.json", "tokenizer_test_vectors.json") }
    from(File(bundleDir, "tokenizer")) { include("vocab.txt") }
    into(layout.buildDirectory.dir("generated/edgekit-assets"))
    doFirst {
        require(File(bundleDir, modelFile).isFile) {
            "no $modelFile in $bundleDir: run `edgekit export --device pixel4` or pass -PedgekitBundle=... -PedgekitModel=..."
        }
    }
}
tasks.named("preBuild") { dependsOn(copyBundleAssets) }

dependencies {
    implementation(project(":edgekit"))
}
