"""``python -m cloud_ingest run ...``: the ingester as a process."""

from cloud_ingest.cli import main

if __name__ == "__main__":
    main()
