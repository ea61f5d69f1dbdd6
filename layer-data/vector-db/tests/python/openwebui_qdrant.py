"""Drives the vector store with the real qdrant-client, in the call sequence Open WebUI
0.12.x uses with VECTOR_DB=qdrant: its multitenancy mode (five shared collections, a
tenant_id on every point and every filter) and its legacy mode (a collection per logical
name). Every step checks what came back; any mismatch raises and the exit status is 1.

Usage: QDRANT_URL=http://127.0.0.1:PORT QDRANT_API_KEY=... python3 openwebui_qdrant.py
Prints a JSON summary on success.
"""

import json
import math
import os
import random
import sys
import uuid

from qdrant_client import QdrantClient
from qdrant_client.http import models
from qdrant_client.http.exceptions import UnexpectedResponse

DIM = 384
PREFIX = "open-webui"
rng = random.Random(7)


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def rand_vec():
    return unit([rng.gauss(0, 1) for _ in range(DIM)])


def near(v, eps=0.001):
    return unit([x + rng.gauss(0, eps) for x in v])


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(fn, status, *texts):
    try:
        fn()
    except UnexpectedResponse as e:
        body = e.content.decode()
        expect(e.status_code == status, f"status {e.status_code} != {status}: {body}")
        for t in texts:
            expect(t in body, f"`{t}` not in {body}")
        return body
    raise AssertionError(f"no error; wanted {status} {texts}")


def items(tenant, n, file_id):
    out = []
    for i in range(n):
        out.append(
            {
                "id": str(uuid.uuid4()),
                "vector": rand_vec(),
                "text": f"chunk {i} of {file_id}",
                "metadata": {"file_id": file_id, "hash": f"h-{file_id}", "start_index": i * 100, "source": f"{file_id}.pdf"},
            }
        )
    return out


def scroll_all(client, name, flt):
    points, offset, pages = [], None, 0
    while True:
        page, offset = client.scroll(
            collection_name=name, scroll_filter=flt, limit=1000, offset=offset,
            with_payload=True, with_vectors=False,
        )
        points.extend(page)
        pages += 1
        if offset is None:
            return points, pages


def tenant_filter(tenant, *more):
    return models.Filter(
        must=[models.FieldCondition(key="tenant_id", match=models.MatchValue(value=tenant)), *more]
    )


def multitenancy(client):
    """Open WebUI's default mode."""
    physical = {k: f"{PREFIX}_{k}" for k in ["memories", "files", "web-search", "hash-based", "knowledge"]}
    for name in physical.values():
        if not client.collection_exists(name):
            client.create_collection(
                collection_name=name,
                vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE, on_disk=False),
                hnsw_config=models.HnswConfigDiff(payload_m=16, m=0),
            )
            client.create_payload_index(
                collection_name=name, field_name="tenant_id",
                field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True, on_disk=False),
                wait=True,
            )
            for field in ["metadata.hash", "metadata.file_id"]:
                client.create_payload_index(
                    collection_name=name, field_name=field,
                    field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, on_disk=False),
                    wait=True,
                )
    info = client.get_collection(physical["files"])
    expect(info.config.params.vectors.size == DIM, f"size {info.config.params.vectors.size}")
    expect("tenant_id" in info.payload_schema, f"indexes {info.payload_schema}")

    files = physical["files"]
    # Two files as two tenants; the second one large enough to need three scroll pages.
    a = items("file-a", 150, "a")
    b = items("file-b", 2100, "b")
    for tenant, chunk in [("file-a", a), ("file-b", b)]:
        client.upload_points(
            collection_name=files,
            points=[
                models.PointStruct(id=c["id"], vector=c["vector"], payload={"text": c["text"], "metadata": c["metadata"], "tenant_id": tenant})
                for c in chunk
            ],
            batch_size=64, wait=True,
        )
    expect(client.count(files, count_filter=tenant_filter("file-a"), exact=True).count == 150, "count a")
    expect(client.count(files, count_filter=tenant_filter("file-b"), exact=True).count == 2100, "count b")
    expect(client.count(files, count_filter=tenant_filter("file-none"), exact=True).count == 0, "count none")

    # search: the nearest chunk of the right tenant, filtered by file ids.
    target = a[17]
    res = client.query_points(
        collection_name=files, query=near(target["vector"]),
        query_filter=tenant_filter("file-a", models.FieldCondition(key="metadata.file_id", match=models.MatchAny(any=["a", "zzz"]))),
        limit=5, with_payload=True, with_vectors=False,
    )
    expect(len(res.points) == 5, f"{len(res.points)} hits")
    expect(str(res.points[0].id) == target["id"], f"top hit {res.points[0].id} != {target['id']}")
    expect(0.99 < res.points[0].score <= 1.0001, f"score {res.points[0].score}")
    expect(all(p.payload["tenant_id"] == "file-a" for p in res.points), "tenant leak in search")
    expect(all(res.points[i].score >= res.points[i + 1].score for i in range(4)), "not best first")
    # The other tenant never answers for this one.
    res = client.query_points(collection_name=files, query=target["vector"], query_filter=tenant_filter("file-b"), limit=3)
    expect(all(str(p.id) != target["id"] for p in res.points), "tenant leak")

    # query/get: every point of a tenant, page by page.
    got, pages = scroll_all(client, files, tenant_filter("file-b"))
    expect(len(got) == 2100 and pages == 3, f"scroll {len(got)} in {pages} pages")
    expect(len({str(p.id) for p in got}) == 2100, "scroll repeated a point")
    expect(all(p.payload["metadata"]["file_id"] == "b" for p in got), "scroll payload")

    # delete by ids (inside the tenant), then by filter, then the logical collection.
    gone = [c["id"] for c in a[:10]]
    client.delete(
        collection_name=files,
        points_selector=models.FilterSelector(filter=tenant_filter("file-a", models.HasIdCondition(has_id=gone))),
        wait=True,
    )
    expect(client.count(files, count_filter=tenant_filter("file-a"), exact=True).count == 140, "delete ids")
    client.delete(
        collection_name=files,
        points_selector=models.FilterSelector(filter=models.Filter(must=[models.FieldCondition(key="metadata.file_id", match=models.MatchValue(value="a"))])),
        wait=True,
    )
    expect(client.count(files, count_filter=tenant_filter("file-a"), exact=True).count == 0, "delete filter")
    client.delete(collection_name=files, points_selector=models.FilterSelector(filter=tenant_filter("file-b")), wait=True)
    expect(client.count(files, exact=True).count == 0, "delete tenant")

    # Memories: a user re-indexes when the embedding model's dimension changed.
    mem = physical["memories"]
    memory_id = str(uuid.uuid4())
    client.upsert(mem, points=[models.PointStruct(id=memory_id, vector=rand_vec(), payload={"text": "likes tea", "tenant_id": "user-memory-u1"})], wait=True)
    body = expect_error(
        lambda: client.upsert(mem, points=[models.PointStruct(id=memory_id, vector=[0.1] * 768, payload={"tenant_id": "user-memory-u1"})], wait=True),
        400, "dimension", "embedding",
    )
    return {"physical": len(physical), "scroll_pages": pages, "dimension_error": body}


def legacy(client):
    """Open WebUI with ENABLE_QDRANT_MULTITENANCY_MODE=false: a collection per logical name."""
    name = f"{PREFIX}_file-legacy"
    if not client.collection_exists(name):
        client.create_collection(
            collection_name=name,
            vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
            hnsw_config=models.HnswConfigDiff(m=16),
        )
    expect_error(
        lambda: client.create_collection(collection_name=name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)),
        409, "already exists",
    )
    chunk = items("legacy", 300, "l")
    for start in range(0, len(chunk), 64):
        client.upsert(
            collection_name=name,
            points=[models.PointStruct(id=c["id"], vector=c["vector"], payload={"text": c["text"], "metadata": c["metadata"]}) for c in chunk[start:start + 64]],
            wait=True,
        )
    # Legacy search asks for "everything" when no limit is set: capped, not allocated.
    res = client.query_points(collection_name=name, query=chunk[3]["vector"], limit=999999999, with_payload=True)
    expect(len(res.points) == 300, f"{len(res.points)} hits")
    expect(str(res.points[0].id) == chunk[3]["id"], "legacy top hit")
    # The older search route.
    old = client.http.search_api.search_points(
        collection_name=name,
        search_request=models.SearchRequest(vector=chunk[5]["vector"], limit=2, with_payload=True),
    ).result
    expect(str(old[0].id) == chunk[5]["id"], "search route top hit")
    got, _ = scroll_all(client, name, models.Filter(should=[models.FieldCondition(key="metadata.hash", match=models.MatchValue(value="h-l"))]))
    expect(len(got) == 300, f"legacy query {len(got)}")
    client.delete(collection_name=name, points_selector=models.PointIdsList(points=[c["id"] for c in chunk[:100]]), wait=True)
    expect(client.count(name, exact=True).count == 200, "legacy delete ids")
    retrieved = client.retrieve(collection_name=name, ids=[chunk[150]["id"], chunk[0]["id"]], with_vectors=True)
    expect(len(retrieved) == 1 and len(retrieved[0].vector) == DIM, "retrieve")
    # Open WebUI's has_collection on a name that is not there, and a missing collection.
    expect(not client.collection_exists(f"{PREFIX}_nothing"), "exists")
    body = expect_error(lambda: client.get_collection(f"{PREFIX}_nothing"), 404, "Not found: Collection", "doesn't exist")
    return {"legacy_points": 200, "missing_error": body}


def reset(client):
    for c in client.get_collections().collections:
        client.delete_collection(collection_name=c.name)
    expect(client.get_collections().collections == [], "reset")


def main():
    url = os.environ["QDRANT_URL"]
    key = os.environ.get("QDRANT_API_KEY") or None
    client = QdrantClient(url=url, api_key=key, timeout=30, prefer_grpc=False)
    if key:
        bad = QdrantClient(url=url, api_key="wrong", timeout=5, check_compatibility=False)
        expect_error(lambda: bad.get_collections(), 401)
    summary = {"multitenancy": multitenancy(client), "legacy": legacy(client)}
    reset(client)
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report and fail
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
