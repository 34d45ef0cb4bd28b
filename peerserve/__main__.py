from peerserve.cli import main

if __name__ == "__main__":  # guarded: the leader's solver worker process imports this module
    raise SystemExit(main())
