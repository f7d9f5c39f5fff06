// edgekit Android sample: a plain-Kotlin WordPiece tokenizer (:tokenizer), a LiteRT model wrapper (:edgekit)
// and a semantic-search demo app (:app) that consume an edgekit bundle (out/<device>/).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "edgekit-android-sample"
include(":tokenizer", ":edgekit", ":app")
