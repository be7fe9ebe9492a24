"""The OpenAPI 3.1 description of /api/search, generated from the field table.

docs/search-openapi.yaml is this document written out (``python -m indexer.openapi``);
a test keeps the two equal. The API serves it as JSON at /api/search/openapi.json.
"""
from __future__ import annotations

import sys
from typing import Any

from .documents import FIELD_BY_NAME, MAPPING_VERSION
from .search import FACETABLE, FILTERABLE, MAX_FACET_SIZE, MAX_SIZE, MAX_WINDOW, SORTABLE

_SCHEMA_TYPES = {"keyword": "string", "date": "string", "integer": "integer", "float": "number",
                 "boolean": "boolean", "text": "string"}


def _filter_params() -> list[dict[str, Any]]:
    out = []
    for name in FILTERABLE:
        field = FIELD_BY_NAME[name]
        schema: dict[str, Any] = {"type": _SCHEMA_TYPES[field.type]}
        if field.type == "date":
            schema["pattern"] = "^[0-9]{8}$"
        out.append({"name": name, "in": "query", "required": False, "style": "form", "explode": True,
                    "description": f"{field.type} filter; repeat the parameter to match any of several values.",
                    "schema": {"type": "array", "items": schema}})
        if field.type in ("integer", "float", "date"):
            for bound, word in (("gte", "at least"), ("lte", "at most")):
                out.append({"name": f"{name}.{bound}", "in": "query", "required": False,
                            "description": f"{name} {word} this value.", "schema": schema})
    return out


def document() -> dict[str, Any]:
    error = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    facet_bucket = {"type": "object", "properties": {"value": {}, "count": {"type": "integer"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "slidearchive slide search", "version": f"1.{MAPPING_VERSION}.0",
                 "description": "Search whole-slide images by what they show: specimen, stain, scanner, "
                                "magnification, pyramid and AI results. One document per series; slides only "
                                "unless kind=any or a kind filter is given. Filters on different fields are "
                                "combined with AND, values of one field with OR. Facet counts are over the "
                                "filtered result set."},
        "paths": {
            "/api/search": {"get": {
                "operationId": "searchSlides",
                "summary": "Free text, filters, facets, sorting and paging over slide documents",
                "parameters": [
                    {"name": "q", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "Free text; every word must match (descriptions, anatomy, stains, "
                                    "scanner, algorithm names, collection)."},
                    {"name": "stain", "in": "query", "required": False, "style": "form", "explode": True,
                     "schema": {"type": "array", "items": {"type": "string"}},
                     "description": "A stain as a user names it: HE (or H&E: hematoxylin and eosin, both "
                                    "codes required), hematoxylin, eosin, or a code (SCT:12710003, or a bare "
                                    "SNOMED code value). Matches specimen.stain_codes; repeat to require "
                                    "several. An unknown name answers 400 (search names with q=)."},
                    {"name": "facet", "in": "query", "required": False, "style": "form", "explode": True,
                     "schema": {"type": "array", "items": {"type": "string", "enum": list(FACETABLE)}},
                     "description": "Fields to count values of (repeat or comma-separate)."},
                    {"name": "facet_size", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_FACET_SIZE, "default": 10}},
                    {"name": "sort", "in": "query", "required": False,
                     "schema": {"type": "string"},
                     "description": "Comma-separated fields, '-' for descending; default relevance with q, "
                                    f"else series_uid. Sortable: {', '.join(SORTABLE)}."},
                    {"name": "page", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "default": 1}},
                    {"name": "size", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SIZE, "default": 20},
                     "description": f"Hits per page; page * size may not exceed {MAX_WINDOW}."},
                    *_filter_params(),
                ],
                "responses": {
                    "200": {"description": "Matching slides", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["total", "hits", "facets"],
                        "properties": {
                            "total": {"type": "integer"}, "page": {"type": "integer"}, "size": {"type": "integer"},
                            "hits": {"type": "array", "items": {"type": "object"}},
                            "facets": {"type": "object",
                                       "additionalProperties": {"type": "array", "items": facet_bucket}}}}}}},
                    "400": {"description": "A query the index cannot answer (unknown field, bad value, "
                                           "too deep paging)",
                            "content": {"application/json": {"schema": error}}},
                    "503": {"description": "The index is down, too slow or overloaded; retry later",
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                            "content": {"application/json": {"schema": error}}},
                }}},
            "/api/search/openapi.json": {"get": {
                "operationId": "searchOpenApi", "summary": "This document",
                "responses": {"200": {"description": "OpenAPI document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
    }


def main() -> None:
    import yaml  # only for writing the docs file

    sys.stdout.write("# Generated by `python -m indexer.openapi > docs/search-openapi.yaml`; do not edit.\n")
    sys.stdout.write(yaml.safe_dump(document(), sort_keys=False, width=100))


if __name__ == "__main__":
    main()
