// Android library: a thin wrapper over the LiteRT interpreter that runs an edgekit .tflite on tokenizer output.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "edgekit.android"
    compileSdk = 35
    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    api(project(":tokenizer"))
    // LiteRT (the successor of TensorFlow Lite; same org.tensorflow.lite.Interpreter API). To use the
    // classic artifact instead: implementation("org.tensorflow:tensorflow-lite:2.16.1").
    api("com.google.ai.edge.litert:litert:1.4.1")
}
