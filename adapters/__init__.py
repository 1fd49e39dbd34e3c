"""Adapters: domain objects (xarray fields, AnnData) <-> the core's ``Prepared``.

Installed as ``sciencevae.adapters``. The climate (xarray) and cells (AnnData)
adapters arrive with their issues; the contract they implement is
:class:`sciencevae.data.Prepared`.
"""
