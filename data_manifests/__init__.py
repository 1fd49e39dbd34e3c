"""Dataset manifests (JSON), installed as ``sciencevae.data_manifests``; read by :mod:`sciencevae.fetch`."""
