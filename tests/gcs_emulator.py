"""A Google Cloud Storage bucket on 127.0.0.1, for tests of gs:// workdirs.

  python tests/gcs_emulator.py PORT BUCKET     # serves until killed

The server is the gcp-storage-emulator package (in-memory). Its media
downloads leave out the `x-goog-generation` header that the real service
sends and TensorStore (Orbax's array writer) needs to cache and revalidate
what it read ("Malformed StorageGeneration" without it), and it has no
`moveTo` (the service's rename, which gcsfs tries first and then retries for
half a minute before it copies and deletes); `serve` adds both. Nothing else
is changed. `environment(port)` is what a process needs to talk
to it: gcsfs (epath's gs:// backend) through STORAGE_EMULATOR_HOST,
TensorStore through TENSORSTORE_GCS_HTTP_URL, both without credentials.
"""

from __future__ import annotations

import sys


def environment(port: int) -> dict[str, str]:
  url = f"http://127.0.0.1:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",   # TensorStore: no OAuth
      # gcsfs would otherwise first ask a storage-control gRPC endpoint,
      # which the emulator lacks, about the bucket's layout (60 s timeout).
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


def _with_generation(handler):
  def wrapped(request, response, storage, *args, **kwargs):
    handler(request, response, storage, *args, **kwargs)
    media = handler.__name__ == "download" or "alt" in request.query
    if media and response.status.value in (200, 206):
      try:
        obj = storage.get_file_obj(request.params["bucket_name"],
                                   request.params["object_id"])
      except Exception:   # not found: the handler set the status already
        return
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
  return wrapped


def _move(request, response, storage, *args, **kwargs):
  """objects.move: the object under its new name, in one call."""
  from http import HTTPStatus
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects
  bucket, params = request.params["bucket_name"], request.params
  try:
    moved = objects._copy(request.base_url, storage, bucket,
                          params["object_id"], bucket,
                          params["dest_object_id"])
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return
  storage.delete_file(bucket, params["object_id"])
  response.json(moved)


def serve(port: int, bucket: str) -> None:
  from gcp_storage_emulator import server, settings
  from gcp_storage_emulator.handlers import objects
  move = (rf"^{settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/"
          rf"(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$")
  server.HANDLERS = ((move, {server.POST: _move}),) + server.HANDLERS
  for _, methods in server.HANDLERS:
    for method, handler in list(methods.items()):
      if handler in (objects.download, objects.get):
        methods[method] = _with_generation(handler)
  server.create_server("127.0.0.1", port, in_memory=True,
                       default_bucket=bucket).run()


if __name__ == "__main__":
  serve(int(sys.argv[1]), sys.argv[2])
