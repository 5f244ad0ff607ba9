"""Deepgram Flux streaming speech-to-text on Amazon SageMaker."""
