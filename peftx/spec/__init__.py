"""What flows between the plug-ins: a task's input spec and the one index space every symbol input shares."""
