"""The server around the app: uvicorn's protocol with the limits it lacks, and `serve`."""
