"""MockFluxEndpoint: a local SageMaker endpoint running a scripted Flux (filled in later)."""
