"""A minimal S3 client (AWS Signature V4, path-style) using only the standard library.

The e2e harness needs to create buckets and read and write objects in the cluster's S3
server, and so do the test Jobs that run on the executor node; a stdlib client keeps
both free of any S3 library choice the runtime makes. The file is self-contained so a
Job can mount it from a ConfigMap and run it:

    python s3.py put BUCKET KEY VALUE      python s3.py get BUCKET KEY
    python s3.py mb BUCKET

reading S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY and S3_REGION from the environment.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


class S3Error(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"S3 answered {status}: {body[:500]}")
        self.status = status


class S3:
    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
        self.endpoint = endpoint.rstrip("/")
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, prefix: str = "S3_") -> S3:
        env = dict(os.environ if env is None else env)
        return cls(env[prefix + "ENDPOINT"], env[prefix + "ACCESS_KEY"], env[prefix + "SECRET_KEY"],
                   env.get(prefix + "REGION", "us-east-1"))

    def request(self, method: str, bucket: str, key: str = "", body: bytes = b"") -> bytes:
        host = urllib.parse.urlparse(self.endpoint).netloc
        path = "/" + bucket + ("/" + urllib.parse.quote(key, safe="/~") if key else "")
        now = dt.datetime.now(dt.UTC)
        amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload_hash = hashlib.sha256(body).hexdigest()
        headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
        signed = ";".join(sorted(headers))
        canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "",
                               signed, payload_hash])
        scope = f"{date}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key_bytes = ("AWS4" + self.secret_key).encode()
        for part in (date, self.region, "s3", "aws4_request"):
            key_bytes = hmac.new(key_bytes, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        # An explicit content type: urllib's default (form-urlencoded) makes some servers
        # parse the body as a form and store an empty object.
        headers["content-type"] = "application/octet-stream"
        req = urllib.request.Request(self.endpoint + path, data=body if method == "PUT" else None,
                                     method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            raise S3Error(exc.code, exc.read().decode(errors="replace")) from exc

    def make_bucket(self, bucket: str) -> None:
        try:
            self.request("PUT", bucket)
        except S3Error as exc:
            if exc.status != 409:  # BucketAlreadyOwnedByYou
                raise

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.request("PUT", bucket, key, data)

    def get(self, bucket: str, key: str) -> bytes:
        return self.request("GET", bucket, key)


def main(argv: list[str]) -> int:
    s3 = S3.from_env()
    if argv[0] == "mb":
        s3.make_bucket(argv[1])
    elif argv[0] == "put":
        s3.make_bucket(argv[1])
        s3.put(argv[1], argv[2], argv[3].encode())
        print(f"wrote s3://{argv[1]}/{argv[2]} ({len(argv[3])} bytes)")
    elif argv[0] == "get":
        sys.stdout.write(s3.get(argv[1], argv[2]).decode())
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
