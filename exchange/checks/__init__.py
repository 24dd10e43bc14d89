"""The checks a parsed package passes before it is accepted: schema, signature, authorisation."""
