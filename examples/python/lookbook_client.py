#!/usr/bin/env python3
"""Lookbook over gRPC, from Python: a storefront's four calls.

1. AddProduct: import a product from its photo (plus attributes).
2. RecommendSimilar: products that look like it.
3. RecordInteraction: a shopper viewed it and put the first similar product
   in the cart.
4. RecommendForUser: what that shopper should see next, and why.

Stubs are generated at run time from proto/lookbook/v1/recommender.proto with
grpc_tools.protoc into a cache folder keyed by the proto's sha256, so nothing
generated is committed and the example runs as is:

    python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
    LOOKBOOK_TOKEN=... .venv/bin/python examples/python/lookbook_client.py \\
        --server 127.0.0.1:50051 --photo shirt.jpg --product-id sku-1 \\
        --attribute articleType=Shirts --attribute baseColour=Blue --shopper alice

The last line printed is machine-checkable:
    RESULT {"similar": [ids], "forUser": [ids], "reasons": [reasons]}
Exit status: 0 on success, 1 when a call fails (gRPC code and details on
stderr), 2 on bad arguments.
"""

import argparse
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
# The repository's proto/ folder; --proto-root points elsewhere when the
# example is copied out of the repository (keep lookbook/v1/recommender.proto
# under it).
DEFAULT_PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO_FILE = "lookbook/v1/recommender.proto"


def load_stubs(proto_root):
    """Returns (recommender_pb2, recommender_pb2_grpc), generating them once.

    The cache key covers the proto's bytes and the protoc/protobuf versions,
    so an edited proto or an upgraded grpcio-tools gets fresh stubs.
    """
    from importlib.metadata import version

    from grpc_tools import protoc

    proto_root = os.path.abspath(proto_root)
    proto_path = os.path.join(proto_root, PROTO_FILE)
    try:
        with open(proto_path, "rb") as f:
            proto_bytes = f.read()
    except OSError as e:
        sys.exit(f"error: cannot read {proto_path} ({e.strerror}); pass --proto-root")
    key = hashlib.sha256(
        proto_bytes
        + b"\0" + version("grpcio-tools").encode()
        + b"\0" + version("protobuf").encode()
    ).hexdigest()[:16]

    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    bases = [
        os.path.join(cache_home, "lookbook-client-stubs"),
        # A read-only or missing home: a per-user temp folder.
        os.path.join(tempfile.gettempdir(), f"lookbook-client-stubs-{os.getuid()}"),
    ]
    for i, base in enumerate(bases):
        out = os.path.join(base, key)
        try:
            generate(protoc, proto_root, proto_path, base, out)
            break
        except OSError:
            if i == len(bases) - 1:
                raise

    sys.path.insert(0, out)
    pb2 = importlib.import_module("lookbook.v1.recommender_pb2")
    pb2_grpc = importlib.import_module("lookbook.v1.recommender_pb2_grpc")
    return pb2, pb2_grpc


def generate(protoc, proto_root, proto_path, base, out):
    """Generates the stubs into `out` unless they are there already."""
    if os.path.isfile(os.path.join(out, "lookbook", "v1", "recommender_pb2_grpc.py")):
        return
    os.makedirs(base, exist_ok=True)
    # Generate into a scratch folder, then rename it into place: concurrent
    # runs never import a half-written module.
    scratch = tempfile.mkdtemp(prefix=".gen-", dir=base)
    try:
        well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={scratch}",
            f"--grpc_python_out={scratch}",
            proto_path,
        ])
        if rc != 0:
            sys.exit(f"error: grpc_tools.protoc failed on {proto_path} (exit {rc})")
        try:
            os.rename(scratch, out)
        except OSError:
            if not os.path.isdir(out):  # anything but a concurrent run's win
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Import a product from a photo, find similar products, record "
        "a shopper's interactions and ask for that shopper's recommendations (gRPC).",
        epilog="The bearer token, when the server wants one, comes from $LOOKBOOK_TOKEN.",
    )
    p.add_argument("--server", default="127.0.0.1:50051", help="gRPC address, host:port")
    p.add_argument("--photo", required=True, help="JPEG/PNG/WebP photo of the product")
    p.add_argument("--product-id", required=True, help="id to import the product under")
    p.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE",
                   help="product attribute, repeatable (e.g. articleType=Shirts)")
    p.add_argument("--shopper", default="example-shopper", help="shopper (user) id")
    p.add_argument("--catalog-product", action="append", default=[], metavar="ID",
                   help="a product already in the catalogue that the shopper also "
                   "viewed, repeatable")
    p.add_argument("--k", type=int, default=5, help="how many recommendations (default 5)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="deadline of each call in seconds (default 30)")
    p.add_argument("--ca-cert", metavar="PEM",
                   help="connect with TLS, trusting this CA certificate")
    p.add_argument("--tls", action="store_true",
                   help="connect with TLS, trusting the system's CAs")
    p.add_argument("--tls-server-name", metavar="NAME",
                   help="with TLS, check the certificate against NAME instead of "
                   "the --server host (e.g. a cert for localhost, dialled at 127.0.0.1)")
    p.add_argument("--proto-root", default=DEFAULT_PROTO_ROOT,
                   help="folder holding lookbook/v1/recommender.proto (default: the "
                   "repository's proto/)")
    args = p.parse_args(argv)

    attributes = {}
    for item in args.attribute:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--attribute wants KEY=VALUE, got {item!r}")
        attributes[key] = value
    args.attributes = attributes
    try:
        with open(args.photo, "rb") as f:
            args.image = f.read()
    except OSError as e:
        p.error(f"cannot read --photo {args.photo}: {e.strerror}")
    if args.ca_cert:
        try:
            with open(args.ca_cert, "rb") as f:
                args.ca_pem = f.read()
        except OSError as e:
            p.error(f"cannot read --ca-cert {args.ca_cert}: {e.strerror}")
    if args.k <= 0:
        p.error("--k must be positive")
    return args


class CallFailed(Exception):
    def __init__(self, rpc, err):
        super().__init__(rpc)
        self.rpc = rpc
        self.err = err


def open_channel(args):
    if args.ca_cert or args.tls or args.tls_server_name:
        creds = grpc.ssl_channel_credentials(
            root_certificates=args.ca_pem if args.ca_cert else None
        )
        options = []
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
        return grpc.secure_channel(args.server, creds, options=options)
    return grpc.insecure_channel(args.server)


def run(args, pb2, stub):
    token = os.environ.get("LOOKBOOK_TOKEN")
    metadata = [("authorization", f"Bearer {token}")] if token else []

    def call(name, request):
        try:
            return getattr(stub, name)(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as e:
            raise CallFailed(name, e) from None

    # 1. Import the product from its photo: the server embeds the image,
    #    makes a thumbnail and stores both; searchable when this returns.
    added = call("AddProduct", pb2.AddProductRequest(
        product_id=args.product_id, image=args.image, attributes=args.attributes,
    ))
    print(f"AddProduct {args.product_id}: created={added.created} "
          f"catalogSize={added.catalog_size}")

    # 2. Products that look like it (the query product itself is excluded).
    similar = call("RecommendSimilar", pb2.RecommendSimilarRequest(
        product_id=args.product_id, k=args.k,
    )).items
    print(f"RecommendSimilar {args.product_id}: {len(similar)} items")
    for item in similar:
        print(f"  {item.product_id}  score={item.score:.4f}")

    # 3. The shopper viewed the new product (and any --catalog-product) and
    #    put the first similar one in the cart.
    interactions = [(args.product_id, pb2.ACTION_VIEW)]
    interactions += [(pid, pb2.ACTION_VIEW) for pid in args.catalog_product]
    if similar:
        interactions.append((similar[0].product_id, pb2.ACTION_ADD_TO_CART))
    for product_id, action in interactions:
        call("RecordInteraction", pb2.RecordInteractionRequest(
            interaction=pb2.Interaction(
                user_id=args.shopper, product_id=product_id, action=action,
            ),
        ))
        print(f"RecordInteraction {args.shopper} {pb2.Action.Name(action)} {product_id}")

    # 4. What the shopper should see next, with a reason for each item.
    for_user = call("RecommendForUser", pb2.RecommendForUserRequest(
        user_id=args.shopper, k=args.k,
    )).items
    print(f"RecommendForUser {args.shopper}: {len(for_user)} items")
    for item in for_user:
        print(f"  {item.product_id}  score={item.score:.4f}  reason={item.reason!r}")

    result = {
        "similar": [item.product_id for item in similar],
        "forUser": [item.product_id for item in for_user],
        "reasons": [item.reason for item in for_user],
    }
    print("RESULT " + json.dumps(result), flush=True)


def main(argv=None):
    args = parse_args(argv)
    pb2, pb2_grpc = load_stubs(args.proto_root)
    with open_channel(args) as channel:
        stub = pb2_grpc.RecommenderServiceStub(channel)
        try:
            run(args, pb2, stub)
        except CallFailed as e:
            code = e.err.code() if hasattr(e.err, "code") else None
            details = e.err.details() if hasattr(e.err, "details") else str(e.err)
            name = code.name if code is not None else "UNKNOWN"
            print(f"error: {e.rpc} failed: {name}: {details}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
