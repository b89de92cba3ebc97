//! The route methods both consumer builders share (`handle`, `upcast`,
//! `handle_pattern`, `layer`, ...), written once: each builder keeps its
//! routes in a `router` field and expands this macro in its `impl`.

macro_rules! route_methods {
    () => {
        /// Routes events of type `E::TYPE` to `handler`, a plain
        /// `async fn(E, Context<S>)` returning `Result<(), HandlerError>`
        /// or anything else that is [`IntoOutcome`](crate::consume::IntoOutcome).
        pub fn handle<E, F, Fut>(mut self, handler: F) -> Self
        where
            E: crate::event::Event,
            F: Fn(E, crate::consume::Context<S>) -> Fut + Send + Sync + 'static,
            Fut: std::future::Future + Send + 'static,
            Fut::Output: crate::consume::IntoOutcome,
        {
            self.router
                .handle::<E, F, Fut>(handler, crate::consume::HandlerOptions::default());
            self
        }

        /// Like [`handle`](Self::handle), with settings of this route that
        /// override the consumer's (a longer or shorter timeout).
        ///
        /// ```no_run
        /// use std::time::Duration;
        /// use jetevents::consume::{Consumer, Context, HandlerError, HandlerOptions};
        /// # use serde::{Deserialize, Serialize};
        /// # #[derive(Serialize, Deserialize)] struct Placed { id: String }
        /// # impl jetevents::Event for Placed { const TYPE: &'static str = "shop.order.placed.v1"; }
        /// # #[derive(Serialize, Deserialize)] struct Closed { day: String }
        /// # impl jetevents::Event for Closed { const TYPE: &'static str = "shop.day.closed.v1"; }
        ///
        /// async fn on_placed(_: Placed, _: Context) -> Result<(), HandlerError> { Ok(()) }
        /// async fn build_daily_report(_: Closed, _: Context) -> Result<(), HandlerError> { Ok(()) }
        ///
        /// # fn f(client: jetevents::client::Client) {
        /// let builder = Consumer::builder(&client, "shop-reports")
        ///     .handler_timeout(Duration::from_secs(30))
        ///     .handle(on_placed)
        ///     .handle_with(
        ///         build_daily_report,
        ///         HandlerOptions::new().timeout(Duration::from_secs(20 * 60)),
        ///     );
        /// # }
        /// ```
        pub fn handle_with<E, F, Fut>(
            mut self,
            handler: F,
            options: crate::consume::HandlerOptions,
        ) -> Self
        where
            E: crate::event::Event,
            F: Fn(E, crate::consume::Context<S>) -> Fut + Send + Sync + 'static,
            Fut: std::future::Future + Send + 'static,
            Fut::Output: crate::consume::IntoOutcome,
        {
            self.router.handle::<E, F, Fut>(handler, options);
            self
        }

        /// Accepts events of an older version `Old` too: they are converted
        /// with `upcast` and handled by the handler of `New` (which must be
        /// added with [`handle`](Self::handle), before or after), inside its
        /// route layers.
        ///
        /// ```no_run
        /// use jetevents::consume::{Consumer, Context, HandlerError};
        /// # use serde::{Deserialize, Serialize};
        /// #[derive(Serialize, Deserialize)]
        /// struct BookedV1 { id: String }
        /// impl jetevents::Event for BookedV1 { const TYPE: &'static str = "booking.appointment.booked.v1"; }
        /// #[derive(Serialize, Deserialize)]
        /// struct BookedV2 { id: String, channel: String }
        /// impl jetevents::Event for BookedV2 { const TYPE: &'static str = "booking.appointment.booked.v2"; }
        ///
        /// async fn on_booked(event: BookedV2, _: Context) -> Result<(), HandlerError> { Ok(()) }
        ///
        /// # fn f(client: jetevents::client::Client) {
        /// let builder = Consumer::builder(&client, "calendar")
        ///     .handle(on_booked)
        ///     .upcast(|old: BookedV1| BookedV2 { id: old.id, channel: "unknown".into() });
        /// # }
        /// ```
        pub fn upcast<Old, New, F>(mut self, upcast: F) -> Self
        where
            Old: crate::event::Event,
            New: crate::event::Event,
            F: Fn(Old) -> New + Send + Sync + 'static,
        {
            self.router.upcast::<Old, New, F>(upcast);
            self
        }

        /// Routes every event whose type matches `pattern` (a glob over the
        /// four type tokens: `booking.appointment.*`, `booking.>`) and has
        /// no typed handler to `handler`, which gets the raw
        /// [`Envelope`](crate::envelope::Envelope).
        pub fn handle_pattern<F, Fut>(mut self, pattern: &str, handler: F) -> Self
        where
            F: Fn(crate::envelope::Envelope, crate::consume::Context<S>) -> Fut
                + Send
                + Sync
                + 'static,
            Fut: std::future::Future + Send + 'static,
            Fut::Output: crate::consume::IntoOutcome,
        {
            self.router
                .handle_pattern(pattern, handler, crate::consume::HandlerOptions::default());
            self
        }

        /// Like [`handle_pattern`](Self::handle_pattern), with settings of
        /// this route that override the consumer's.
        pub fn handle_pattern_with<F, Fut>(
            mut self,
            pattern: &str,
            handler: F,
            options: crate::consume::HandlerOptions,
        ) -> Self
        where
            F: Fn(crate::envelope::Envelope, crate::consume::Context<S>) -> Fut
                + Send
                + Sync
                + 'static,
            Fut: std::future::Future + Send + 'static,
            Fut::Output: crate::consume::IntoOutcome,
        {
            self.router.handle_pattern(pattern, handler, options);
            self
        }

        /// A tower layer around every route of this consumer: its service
        /// takes a [`Delivery`](crate::consume::Delivery), gives an
        /// [`Outcome`](crate::consume::Outcome) and fails with any error
        /// convertible to [`BoxError`](crate::consume::BoxError) (a failure
        /// is retried; a [`HandlerError`](crate::consume::HandlerError) keeps
        /// its kind). It runs inside the consumer's own concerns (see the
        /// [layer order](crate::consume#middleware)): within the handler
        /// timeout, with in-progress acks, panics caught.
        ///
        /// As in axum, a layer added later wraps the ones added before (runs
        /// first); use `tower::ServiceBuilder` for top-to-bottom order. Add
        /// layers after `with_state`: they are typed by the state.
        ///
        /// ```no_run
        /// use std::time::Duration;
        /// use jetevents::consume::{Consumer, Context, HandlerError};
        /// # #[derive(serde::Serialize, serde::Deserialize)] struct Paid;
        /// # impl jetevents::Event for Paid { const TYPE: &'static str = "billing.invoice.paid.v1"; }
        /// # async fn on_paid(_: Paid, _: Context) -> Result<(), HandlerError> { Ok(()) }
        /// # fn f(client: jetevents::client::Client) {
        /// // At most 4 handler calls at once, whatever the concurrency.
        /// let builder = Consumer::builder(&client, "ledger")
        ///     .handle(on_paid)
        ///     .layer(tower::limit::ConcurrencyLimitLayer::new(4));
        /// # }
        /// ```
        pub fn layer<L: crate::consume::HandlerLayer<S>>(mut self, layer: L) -> Self {
            self.router.layer(layer.into_layer_fn());
            self
        }

        /// A tower layer around the route added just before (by `handle`,
        /// `handle_with`, `handle_pattern` or `handle_pattern_with`), and
        /// the types upcast to it: inside the consumer's [`layer`](Self::layer)s.
        /// Called again, the new layer wraps the earlier one.
        pub fn route_layer<L: crate::consume::HandlerLayer<S>>(mut self, layer: L) -> Self {
            self.router.route_layer(layer.into_layer_fn());
            self
        }
    };
}
