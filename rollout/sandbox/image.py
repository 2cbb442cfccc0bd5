"""The docker sandbox image, built locally (no registry pulls): `docker import` of a tiny rootfs.

The rootfs holds only empty mount points, /bin -> usr/bin style links and a passwd file; the
host's /usr and the solution environment are bind-mounted read-only at run time. The tar is
byte-stable, so its hash names the tag and building is idempotent (cached by tag).
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile

log = logging.getLogger(__name__)

REPOSITORY = "ace-jax-sandbox"

_DIRS = {"usr": 0o755, "etc": 0o755, "tmp": 0o1777, "proc": 0o555, "sys": 0o555, "dev": 0o755,
         "root": 0o755, "home": 0o755, "sandbox": 0o755, "sandbox/work": 0o1777, "sandbox/outbox": 0o755}
_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
_FILES = {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
          "etc/group": "root:x:0:\nnogroup:x:65534:\n"}


def rootfs_tar() -> bytes:
    """The image's root filesystem as a deterministic tar archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, mode in sorted(_DIRS.items()):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
            tar.addfile(info)
        for name, target in sorted(_LINKS.items()):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
            tar.addfile(info)
        for name, text in sorted(_FILES.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_tag() -> str:
    return f"{REPOSITORY}:{hashlib.sha256(rootfs_tar()).hexdigest()[:12]}"


def ensure_image(client) -> str:
    """Import the image unless a docker engine already has it; return its tag."""
    import docker.errors

    tag = image_tag()
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    repo, _, version = tag.partition(":")
    log.info("building docker sandbox image %s", tag)
    client.api.import_image_from_data(rootfs_tar(), repository=repo, tag=version)
    client.images.get(tag)  # raises if the import failed
    return tag
