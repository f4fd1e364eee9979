"""edgecnn.calibration: what quantization learns from data (sample selection, range observers,
calibration tables and their formats). Filled by the INT8 work; it sits between the models/data
(`edgecnn`) and the export stage, and imports nothing from `edgecnn.export`.
"""
