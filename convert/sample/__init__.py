"""`convert synth`: small SEN12MS and DFC2020 trees in the real format, with learnable
content, for the demo and the tests."""
