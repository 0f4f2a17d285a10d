"""Every GraphQL document the mirror sends to W&B, in one place.

Each one validates against W&B's schema (``shared/wandb/schema.graphql``; a test checks), and
each asks for no more than its step of the sync needs: the listing only the fields that show a
run moved (never config or summaries, which can be gigabytes across a project), full records
only for runs that moved, history in windows that W&B never samples.
"""

from __future__ import annotations

#: The fields whose change means a run must be fetched again (see ``mirror.sync.plan``).
LISTING_FIELDS = (
    "name",
    "state",
    "heartbeatAt",
    "updatedAt",
    "historyLineCount",
    "tags",
    "displayName",
    "notes",
)

VIEWER = """query MirrorViewer {
  viewer { id username entity }
}"""

RUN_LISTING = (
    """query MirrorRunListing(
  $entity: String!, $project: String!, $cursor: String, $perPage: Int!,
  $order: String, $filters: JSONString
) {
  project(name: $project, entityName: $entity) {
    runCount(filters: $filters)
    runs(filters: $filters, after: $cursor, first: $perPage, order: $order) {
      edges { cursor node { """
    + " ".join(LISTING_FIELDS)
    + """ } }
      pageInfo { endCursor hasNextPage }
    }
  }
}"""
)

RUN_RECORDS = """query MirrorRunRecords(
  $entity: String!, $project: String!, $filters: JSONString, $perPage: Int!
) {
  project(name: $project, entityName: $entity) {
    runs(filters: $filters, first: $perPage, order: "+created_at") {
      edges { node {
        id name displayName description notes state tags group jobType commit host
        sweepName createdAt heartbeatAt updatedAt historyLineCount historyKeys
        config summaryMetrics systemMetrics
        user { name username }
      } }
    }
  }
}"""

HISTORY_PAGE = """query MirrorHistoryPage(
  $entity: String!, $project: String!, $run: String!,
  $minStep: Int64!, $maxStep: Int64!, $pageSize: Int!
) {
  project(name: $project, entityName: $entity) {
    run(name: $run) { history(minStep: $minStep, maxStep: $maxStep, samples: $pageSize) }
  }
}"""

HISTORY_PAGE_WITH_EVENTS = """query MirrorHistoryPageWithEvents(
  $entity: String!, $project: String!, $run: String!,
  $minStep: Int64!, $maxStep: Int64!, $pageSize: Int!, $eventSamples: Int!
) {
  project(name: $project, entityName: $entity) {
    run(name: $run) {
      history(minStep: $minStep, maxStep: $maxStep, samples: $pageSize)
      events(samples: $eventSamples)
    }
  }
}"""

EVENTS = """query MirrorEvents(
  $entity: String!, $project: String!, $run: String!, $eventSamples: Int!
) {
  project(name: $project, entityName: $entity) {
    run(name: $run) { events(samples: $eventSamples) }
  }
}"""

PARQUET_HISTORY = """query MirrorParquetHistory(
  $entity: String!, $project: String!, $run: String!, $liveKeys: [String!]!
) {
  project(name: $project, entityName: $entity) {
    run(name: $run) { parquetHistory(liveKeys: $liveKeys) { parquetUrls liveData } }
  }
}"""

PARQUET_HISTORY_WITH_EVENTS = """query MirrorParquetHistoryWithEvents(
  $entity: String!, $project: String!, $run: String!, $liveKeys: [String!]!,
  $eventSamples: Int!
) {
  project(name: $project, entityName: $entity) {
    run(name: $run) {
      parquetHistory(liveKeys: $liveKeys) { parquetUrls liveData }
      events(samples: $eventSamples)
    }
  }
}"""

#: One mutation writes a whole edit (W&B's SDK sends two: config, tags and notes, then summary).
PUSH_EDIT = """mutation MirrorPushEdit($input: UpsertBucketInput!) {
  upsertBucket(input: $input) { bucket { name } }
}"""

#: every document above, by name, for the schema test
ALL = {
    "VIEWER": VIEWER,
    "RUN_LISTING": RUN_LISTING,
    "RUN_RECORDS": RUN_RECORDS,
    "HISTORY_PAGE": HISTORY_PAGE,
    "HISTORY_PAGE_WITH_EVENTS": HISTORY_PAGE_WITH_EVENTS,
    "EVENTS": EVENTS,
    "PARQUET_HISTORY": PARQUET_HISTORY,
    "PARQUET_HISTORY_WITH_EVENTS": PARQUET_HISTORY_WITH_EVENTS,
    "PUSH_EDIT": PUSH_EDIT,
}
