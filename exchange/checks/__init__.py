"""The checks a package passes: schema, signature, authorisation."""
