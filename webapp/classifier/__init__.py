"""The classification app: upload an ECG image, get class, probabilities and a
Grad-CAM heat map (paper sections 3.4 and 5.2), stored per user."""
