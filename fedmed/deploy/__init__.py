"""Running a real consortium: provisioning, the SuperLink, hospital nodes, runs."""
