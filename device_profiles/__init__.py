"""Built-in device profiles (YAML data files), shipped with the package and read via importlib.resources."""
