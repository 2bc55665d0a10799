"""shelfsight edge side: model runtime, camera, recognition and the kiosk. Never imports TensorFlow."""
