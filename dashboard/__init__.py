"""The Streamlit leaderboard: reads the store read-only (`bench dashboard`).

`data` shapes tables, `plots` draws matplotlib figures (both pure and tested without Streamlit);
`app` is the only module that calls Streamlit; `launch` starts it.
"""
