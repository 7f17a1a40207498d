"""Feature cards: what each SAE feature is, computed once on held-out text and read without the model.

- `store`: the on-disk card set and one card in Neuronpedia's field names (numpy only);
- `label`: heuristic labels; `tokens`: token types (pure Python);
- `text`: the held-out text; `compute`: one pass of the model, per-feature statistics, logit lens (torch);
- `build`: load the shipped or cached cards of an SAE, else build and cache them;
- `render`: HTML cards, the searchable index page and the terminal view.

Importing this package loads nothing heavy; import the submodules you need.
"""
