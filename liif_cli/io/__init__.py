"""Files in and out: images (`images`), plots (`plot`), atomic writes and image discovery."""
