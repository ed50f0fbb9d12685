"""The model registry: pure selection and gate rules, the registrar that writes, rollback."""
