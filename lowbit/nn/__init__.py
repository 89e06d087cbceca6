"""nn.Linear replacements: QuantLinear, quantize_, save/load."""
