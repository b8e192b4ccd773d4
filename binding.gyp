{
  "targets": [
    {
      "target_name": "vmscatter_native",
      "sources": ["native/page-digest.c", "native/chunk-digest.c", "native/transport.c", "native/page-records.c", "native/zstd-batch.c"],
      "cflags": ["-O3", "-Wall", "-Wextra"],
      "defines": ["_GNU_SOURCE"],
      "libraries": ["-ldl"]
    }
  ]
}
