"""The `nextbest` command line: call every RPC readably, seed the demo retailer, run the mesh, operate services."""
