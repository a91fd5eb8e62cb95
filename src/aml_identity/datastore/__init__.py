"""See DESIGN: datastore."""
