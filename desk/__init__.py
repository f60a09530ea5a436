"""The agent desk and supervisor wallboard: a web app beside the IVR that reads and writes the CRM only."""
