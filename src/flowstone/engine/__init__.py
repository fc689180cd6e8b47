"""Planning and executing runs."""
