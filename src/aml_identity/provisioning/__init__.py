"""See DESIGN: provisioning."""
