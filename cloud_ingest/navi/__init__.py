"""The garbage-collection navigator (ごみ収集ナビ): a public, read-only page for residents.

From the pickup events the city's trucks release under ``waste-collection`` (stored by the ingester in InfluxDB)
it tells, for each collection point of a route, today's status: not yet (the round has not started), the truck
is on its way (N points away, estimated time), or collected at hh:mm (JST). Estimates come from
:class:`~cloud_ingest.navi.model.EtaModel`, the median time between consecutive points per route and hour learned
from past rounds and relearned once a day.

- :mod:`~cloud_ingest.navi.routes`: the city's collection points (GeoJSON), in route order;
- :mod:`~cloud_ingest.navi.model`: rounds, the ETA model and today's status (pure, no I/O, no clock of its own);
- :mod:`~cloud_ingest.navi.source`: pickups from InfluxDB, only those of the trucks the city names;
- :mod:`~cloud_ingest.navi.service`: the daily relearning and a short cache of today's pickups;
- :mod:`~cloud_ingest.navi.app`: the page, ``/api/status`` (JSON) and ``/api/route.geojson``;
- :mod:`~cloud_ingest.navi.cli`: ``kyojo navi serve``.

Nothing personal is shown or served: trucks are city vehicles, and no gateway id, pseudonym or household tag
leaves this process; only route, point, status and times.
"""
