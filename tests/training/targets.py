"""The held-out accuracy targets the presets train to, shared by the preset
and default-model tests."""

#: Held-out accuracy targets of issue 2 (fixed seeds).
TARGETS = {
    "perceptron-linear": 0.99,
    "mlp-circle": 0.98,
    "mlp-xor": 0.97,
    "mlp-spiral": 0.95,
    "digits-cnn": 0.97,
}
