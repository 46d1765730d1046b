"""An application server's VAPID signer (RFC 8292), for xup's end-to-end tests, using py_vapid as
Python application servers (pywebpush) do.

  vapid.py new PEM                  make a key pair, keep its private half in PEM, print the
                                    public key as senders put it in k= (base64url, 87 characters)
  vapid.py sign PEM AUD SECONDS     print the Authorization header for audience AUD whose JWT
                                    expires SECONDS from now (negative: already expired)
"""

import sys
import time

from py_vapid import Vapid02, b64urlencode
from cryptography.hazmat.primitives import serialization


def public_key(vapid):
    raw = vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64urlencode(raw)


def main(args):
    if len(args) == 2 and args[0] == "new":
        vapid = Vapid02()
        vapid.generate_keys()
        vapid.save_key(args[1])
        print(public_key(vapid))
    elif len(args) == 4 and args[0] == "sign":
        vapid = Vapid02.from_file(args[1])
        claims = {
            "aud": args[2],
            "sub": "mailto:ops@app.example",
            "exp": int(time.time()) + int(args[3]),
        }
        print(vapid.sign(claims)["Authorization"])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
