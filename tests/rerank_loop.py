"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) as plain loops: the test oracle for
stafast.rerank and the baseline of bench/test_rerank.py.

Step by step as the authors' reference code computes it (the version torchreid and fast-reid
carry), with one choice made explicit: neighbours at equal distance rank by index (a stable
argsort; the reference's default quicksort leaves their order unspecified).  Dense
(q + g) x (q + g) float32 matrices: small inputs only.
"""
import numpy as np


def rerank_loop(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    q_g_dist, q_q_dist, g_g_dist = (np.asarray(a) for a in (q_g_dist, q_q_dist, g_g_dist))
    num_query = q_g_dist.shape[0]
    full = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                           np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    squared = np.power(full, 2).astype(np.float32)
    # each column over its maximum, then transposed: row i of `dist` is column i of `squared`, scaled
    dist = np.transpose(squared / np.max(squared, axis=0))
    n = dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0))

    def k_reciprocal(i, k):
        """The items among the k + 1 nearest of i that have i among their k + 1 nearest."""
        return [c for c in rank[i, :k + 1] if i in rank[c, :k + 1]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        reciprocal = k_reciprocal(i, k1)
        expanded = list(reciprocal)
        for candidate in reciprocal:
            candidate_set = k_reciprocal(candidate, half)
            if len(set(candidate_set) & set(reciprocal)) > 2.0 / 3 * len(candidate_set):
                expanded += candidate_set
        expanded = np.unique(np.array(expanded, dtype=np.int64))
        weight = np.exp(-dist[i, expanded])
        v[i, expanded] = weight / np.sum(weight)

    if k2 != 1:  # local query expansion: the mean of the k2 nearest rows
        expanded_v = np.zeros_like(v)
        for i in range(n):
            expanded_v[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = expanded_v

    jaccard = np.zeros((num_query, n), dtype=np.float32)
    for i in range(num_query):
        overlap = np.zeros(n, dtype=np.float32)
        for column in np.flatnonzero(v[i]):
            rows = np.flatnonzero(v[:, column])
            overlap[rows] += np.minimum(v[i, column], v[rows, column])
        jaccard[i] = 1 - overlap / (2.0 - overlap)

    final = jaccard * (1 - lambda_value) + dist[:num_query] * lambda_value
    return final[:, num_query:]
