"""Zero-shot video-to-music retrieval: CLIP image rows of the video against Wav2CLIP embeddings of the music."""
