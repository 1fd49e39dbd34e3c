"""Case studies: latents -> a science's language (climate trends, gene programmes).

Installed as ``sciencevae.case_studies``.
"""
