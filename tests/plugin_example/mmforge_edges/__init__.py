"""mmforge-edges: a whole modality added to multimae-forge from outside its package (the README's example).

Edge strength (Sobel gradient magnitude of the image's luminance) as a fifth kind of map: a member type
(`codec`), a labeler that makes it (`labeler`), a trainer modality with its output task (`modality`) and a
fine-tuning task that regresses it from rgb (`task`).
Each module registers itself when multimae-forge loads the entry points in
`mmforge_edges-0.1.dist-info/entry_points.txt`; nothing in multimae-forge names this package.
"""
