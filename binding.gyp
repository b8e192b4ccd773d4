{
  "targets": [
    {
      "target_name": "vmscatter_native",
      "sources": ["native/page-digest.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
