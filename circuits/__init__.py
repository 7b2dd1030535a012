"""Attribution graphs over transcoder sets: the local replacement model of a Hugging Face
Llama-family model at one prompt, direct-effect edges by batched backward passes, pruning
and scores as circuit-tracer defines them, and graph files (Neuronpedia JSON + safetensors)."""
