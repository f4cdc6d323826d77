"""KFP pipelines of the project (see bevt.py); `bevt pipeline compile|submit|run-local` drives them."""
