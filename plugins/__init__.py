"""fw's built-in plugins. Each is registered through the ``fw.plugins`` entry-point group."""
