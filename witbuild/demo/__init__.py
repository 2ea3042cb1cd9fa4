"""The bundled demo web: synthetic pages and images, their WARC/WAT files, and the server that hosts them.

The demo's fixed origin lives here, not in :mod:`witbuild.demo.server`, so that the command line can show it as
an option default without importing the image and WARC libraries.
"""

DEMO_HOST = "127.0.0.1"
# Port of `witbuild demo`'s server. The pages' image URLs carry it and pair ids hash the URL, so it decides
# balancing's draws, the dedup shuffle and every sample's shard: one fixed port, one build. 27182 lies below
# Linux's ephemeral range (32768-60999), so no port the OS assigns by itself (Spark's, torch's, an outgoing
# connection's) can ever hold it.
DEMO_PORT = 27182
