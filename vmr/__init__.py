"""What VM-NET and the segment Transformer share: metrics, baselines, the evaluation protocol, the generated benchmark."""
